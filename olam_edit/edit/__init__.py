"""The saved edit: the :class:`Edit` type, its files, apply / revert, LoRA export, model card and
publishing. Modules here take an ``Edit`` as data and never import it back at run time."""

from olam_edit.edit.core import Edit

__all__ = ["Edit"]
