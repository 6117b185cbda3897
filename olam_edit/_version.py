__version__ = "0.1.0"

# Where links in model cards and READMEs point: the project's source repository and its docs (never a
# package-index page, which shows nothing until a release is published there).
SOURCE_URL = "https://github.com/olam-edit/olam-edit"
DOCS_URL = SOURCE_URL + "#readme"
