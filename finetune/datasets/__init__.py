"""AU datasets for fine-tuning: BP4D, DISFA and CSV frame tables, folds, label masks, pixels.
The public names are re-exported by `finetune.data`."""
