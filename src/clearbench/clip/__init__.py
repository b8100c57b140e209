"""The clip track: a CLIP dual encoder that names people zero-shot, and its unlearning.

model (build/load/save, pixel and text conventions), data (identities and photo splits),
train (contrastive training, zero-shot evaluation), run (`python -m clearbench clip ...`),
report (the table; no torch).
"""
