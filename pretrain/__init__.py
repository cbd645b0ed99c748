"""Pretraining: ClipEncoder models, self-supervised objectives, FAISS mining, the DeepSpeed loop,
checkpoints and publishing. Filled by the pretraining, cross-identity and publishing issues."""
