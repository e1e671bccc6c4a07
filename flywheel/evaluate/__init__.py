"""Evaluation: prove the fine-tuned model is better, switch to it safely, keep watching."""
