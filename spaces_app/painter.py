"""The image editor the visitor paints on, with every image it receives checked before it is decoded.

Gradio's ``gr.ImageEditor`` decodes what a client sends (the background, the stroke layers and the
composite) before any handler runs, so a small PNG that claims 12000x12000 pixels would take
gigabytes in the server. :func:`guard` makes one editor read each image's header first and decode
only PNGs within the caps of :func:`olam_edit.spaces_app.images.check_size`, and at most
:data:`MAX_LAYERS` stroke layers. Anything else reaches the handler as a
:class:`~olam_edit.spaces_app.images.RefusedImage`, which :func:`olam_edit.spaces_app.masks.editor_mask`
turns into a clear error in the status line (an error raised here would bypass the status line).

The checks are installed on the instance rather than in a subclass: Gradio writes a ``.pyi`` stub
next to the module of every component subclass when the class is created.
"""

from __future__ import annotations

import types
from typing import Any

import gradio as gr

from olam_edit.spaces_app.images import RefusedImage, check_size, image_size, limit_pil

MAX_LAYERS = 4  # stroke layers decoded per event (the painter has one)


def guard(editor: gr.ImageEditor) -> gr.ImageEditor:
    """``editor`` itself, its decoding guarded (see the module's docstring)."""
    editor.convert_and_format_image = types.MethodType(_checked_convert, editor)  # type: ignore[method-assign]
    editor.preprocess = types.MethodType(_checked_preprocess, editor)  # type: ignore[method-assign]
    return editor


def _checked_convert(editor: gr.ImageEditor, file: Any, flatten_on_white: bool = False) -> Any:
    """The decoded image (as Gradio gives it), or a RefusedImage, decided from the header."""
    if file is None:
        return None
    source = file if isinstance(file, bytes | bytearray | memoryview) else getattr(file, "path", None)
    if source is None:
        return RefusedImage("the painted image is missing")
    refused = check_size(image_size(source))
    if refused is not None:
        return refused
    limit_pil()
    try:
        return gr.ImageEditor.convert_and_format_image(editor, file, flatten_on_white=flatten_on_white)
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # a PNG that breaks off or lies in its chunks
        return RefusedImage(f"the painted image is not a readable PNG ({type(e).__name__})")


def _checked_preprocess(editor: gr.ImageEditor, payload: Any) -> Any:
    """Gradio's value, unless the payload holds more than MAX_LAYERS stroke layers (none decoded then)."""
    if payload is not None:
        held = editor.blob_storage.get(payload.id) if payload.id is not None else payload
        if held is not None and len(held.layers or []) > MAX_LAYERS:
            editor.blob_storage.pop(payload.id or "", None)
            reason = f"the painter sent {len(held.layers)} layers (expected at most {MAX_LAYERS})"
            return {"background": None, "layers": [RefusedImage(reason)], "composite": None}
    return gr.ImageEditor.preprocess(editor, payload)
