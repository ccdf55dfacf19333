"""Faces: blind degradation, face-crop datamodule, Haar face detection and whole-photo restoration."""
