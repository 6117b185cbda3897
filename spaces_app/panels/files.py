"""Wiring of the files panel: download the edit as a zip, apply an uploaded one, publish to the Hub."""

from __future__ import annotations

from typing import Any

import gradio as gr

from olam_edit.errors import EditFileError, explain
from olam_edit.spaces_app.binding import MODEL_EVENTS, UI, bind
from olam_edit.spaces_app.session import Session, history_text
from olam_edit.spaces_app.status import message
from olam_edit.spaces_app.studio import Studio, describe


class FileHandlers:
    """The files panel's handlers (each returns its outputs by name)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def download(self, session: Session) -> dict[str, Any]:
        path = self.studio.download(session)
        return {"file": gr.update(value=str(path), visible=True),
                "status": message(f"{path.name} is ready: click it to download.")}

    def upload(self, upload: str | None, session: Session) -> dict[str, Any]:
        """Apply the uploaded file ``upload`` (its path)."""
        if not upload:
            raise EditFileError(explain("no file was uploaded"))
        edit = self.studio.upload(session, upload)
        return {"session": session, "after": self.studio.before_after(session)[1], "history": history_text(session),
                "status": message(f"Applied the uploaded edit: {describe(edit)}.")}

    def publish(self, session: Session, repo_id: str, private: bool, oauth_token: gr.OAuthToken | None
                ) -> dict[str, Any]:
        """Publish with the visitor's own login (``oauth_token``, from gr.LoginButton), never a Space token."""
        url = self.studio.publish(session, repo_id, private, oauth_token.token if oauth_token else None)
        return {"status": message(f"Published to {url}")}


def wire(studio: Studio, ui: UI) -> None:
    """Connect "Download edit", the upload box and "Publish to the Hub"."""
    h, files = FileHandlers(studio), studio.files
    bind(ui, "download", "click", h.download, ("file", "status"), files, api_name="download")
    bind(ui, "upload", "upload", h.upload, ("session", "after", "history", "status"), files, api_name="upload",
         **MODEL_EVENTS)
    bind(ui, "publish", "click", h.publish, ("status",), files, api_name="publish")
