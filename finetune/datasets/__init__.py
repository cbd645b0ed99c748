"""AU datasets for fine-tuning: BP4D, DISFA and CSV frame tables and their pixels.
The public names are re-exported by `finetune.data`."""
