"""Results: the SQLite store of a study's rows, their key and their JSON encoding.

Below both ``study`` (which writes rows) and ``report`` (which reads them), so neither
imports the other for the schema.
"""
