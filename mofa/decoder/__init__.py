"""Analytic decoder: face model + code -> posed, lit, projected vertices."""
from mofa.decoder.camera import PinholeCamera, camera_rotation, euler_to_matrix, project
from mofa.decoder.decoder import DecodedFace, Decoder, front_facing, lit, to_camera
from mofa.decoder.geometry import linear_combination, vertex_normals
from mofa.decoder.layout import Code, CodeLayout
from mofa.decoder.lighting import AMBIENT_OFFSET, light_coefficients, sh_basis, shade

__all__ = ["AMBIENT_OFFSET", "Code", "CodeLayout", "DecodedFace", "Decoder", "PinholeCamera",
           "camera_rotation", "euler_to_matrix", "front_facing", "light_coefficients",
           "linear_combination", "lit", "project", "sh_basis", "shade", "to_camera", "vertex_normals"]
