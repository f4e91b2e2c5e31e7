"""attention_jax.train"""
