"""`doc2atom eval`: measure every ask mode, the router and atom composition on QA sets.

datasets (SQuAD / HotpotQA readers) -> runner (ingest, ask, score) -> cli (parse, format).
Importing this package stays light: torch and the models load only when a run starts.
"""
