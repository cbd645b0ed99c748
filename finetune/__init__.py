"""Fine-tuning: AU datasets and protocols, heads, the accelerate loop, metrics, backbone download.
Filled by the fine-tuning and publishing issues."""
