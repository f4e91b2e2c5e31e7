"""attention_jax.models"""
