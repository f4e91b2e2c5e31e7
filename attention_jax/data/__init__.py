"""attention_jax.data"""
