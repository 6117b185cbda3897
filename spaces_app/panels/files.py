"""Wiring of the files panel: download the edit as a zip, apply an uploaded one, publish to the Hub."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.errors import EditFileError, explain
from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.pipelines import TEXT
from olam_edit.spaces_app.session import Session, history_text
from olam_edit.spaces_app.status import guarded, message
from olam_edit.spaces_app.studio import Studio, describe
from olam_edit.spaces_app.text_rules import TextSession
from olam_edit.spaces_app.text_studio import TextStudio, label


class FileHandlers:
    """The files panel's handlers (each returns its outputs by name), for the edits of either tab."""

    def __init__(self, studio: Studio) -> None:
        self.studio, self.texts = studio, part_of(studio, TextStudio)

    def download(self, session: Session, text: TextSession | None = None) -> dict[str, Any]:
        is_text = self.texts.tab(session) == TEXT
        path = self.texts.download(session, text or TextSession()) if is_text else self.studio.download(session)
        return {"file": gr.update(value=str(path), visible=True),
                "status": message(f"{path.name} is ready: click it to download.")}

    def upload(self, upload: str | None, session: Session, text: TextSession | None = None) -> dict[str, Any]:
        """Apply the uploaded file ``upload`` (its path)."""
        text = text or TextSession()
        if not upload:
            raise EditFileError(explain("no file was uploaded"))
        if self.texts.tab(session) == TEXT:
            edit, what = self.texts.upload(session, text, upload), label
        else:
            edit, what = self.studio.upload(session, upload), describe
        return {"session": session, "text": text, "after": self.texts.compare(session, text)[1],
                "history": history_text(session), "status": message(f"Applied the uploaded edit: {what(edit)}.")}

    def show_before(self, session: Session, text: TextSession) -> dict[str, Any]:
        """After an upload to the text tab: the grid's base images (an upload brings its own grid)."""
        return {"before": self.texts.compare(session, text)[0]} if self.texts.tab(session) == TEXT else {}

    def publish(self, session: Session, repo_id: str, private: bool, oauth_token: gr.OAuthToken | None,
                text: TextSession | None = None) -> dict[str, Any]:
        """Publish with the visitor's own login (``oauth_token``, from gr.LoginButton), never a Space token."""
        token = oauth_token.token if oauth_token else None
        if self.texts.tab(session) == TEXT:
            url = self.texts.publish(session, text or TextSession(), repo_id, private, token)
        else:
            url = self.studio.publish(session, repo_id, private, token)
        return {"status": message(f"Published to {url}")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect "Download edit", the upload box and "Publish to the Hub"."""
    h, files = FileHandlers(studio), studio.files
    bind(ui, "download", "click", h.download, ("file", "status"), files, api_name="download")
    uploaded = bind(ui, "upload", "upload", h.upload, ("session", "text", "after", "history", "status"), files,
                    api_name="upload", **MODEL_EVENTS)
    outputs = ("before", "status")
    uploaded.then(guarded(h.show_before, outputs, files), [ui.session, ui.text], [ui[n] for n in outputs],
                  api_visibility="private", **MODEL_EVENTS)
    bind(ui, "publish", "click", h.publish, ("status",), files, api_name="publish")
