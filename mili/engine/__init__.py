"""The engine (chapter 03): sampling, detokenizing, scheduling, the model runner and the offline API."""
