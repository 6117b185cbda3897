"""The Hugging Face Hub transport: repo-id checks, write tokens, error translation, and statistics
repos. Edits publish through :mod:`olam_edit.edit.publish`, which builds on this package."""

from olam_edit.hub.stats import pull_stats, push_stats

__all__ = ["pull_stats", "push_stats"]
