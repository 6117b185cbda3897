"""The embedded 64x64 face DCGAN: its network, its shipped weights and the script that made them."""

from olam_edit.adapters.face_dcgan.model import LATENT_SHAPE, load_face_dcgan

__all__ = ["LATENT_SHAPE", "load_face_dcgan"]
