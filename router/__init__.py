"""Retrieval keys: embedder, FAISS key index, selection and refusal.

The router never imports the compiler; what it knows about atoms comes from the KB store.
"""
