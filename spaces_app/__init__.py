"""The olam-edit Space: rewrite one rule of a generative model in the browser (Gradio).

This folder is what a Space repo holds (``app.py`` runs it) and it is also shipped in the wheel as
``olam_edit.spaces_app``, which ``olam-edit demo`` imports. Its modules import each other by their
absolute ``olam_edit.spaces_app`` names, so both ways of running it load the same code. Importing this
package imports nothing (Gradio is loaded by the modules that need it).

Modules, one job each: ``settings`` (server options and fixed sizes), ``session`` (one browser
session's state and undo stack), ``generators`` (the shared models and rewriters), ``images``
(display images, the PNG files handed to Gradio, and size checks before decoding), ``painter`` (the
image editor, its inputs checked before Gradio decodes them), ``masks`` (painted masks to selections
and requests), ``uploads`` (edit files in and out: bounded zip reading, no server path in messages),
``studio`` (the handlers' logic on plain values), ``status`` (status lines and error guarding),
``binding`` (connecting handlers to events by name), ``layout`` (the components), ``panels`` (the
wiring, one module per panel), ``app`` (build and launch).
"""
