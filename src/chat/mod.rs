//! Tokenizer, chat templates and output parsing.
