"""Clip input: from a stored DICOM clip to the classifier's input tensor.

frames: which frames, by time; pixel_data, codecs, decode: decoding only
those frames; preprocess: grey clip and input channels; input: the one
composition of them, used by the judge, training, export checks and the
bench alike.
"""
