//! Training data loaders (jsonl formats of upstream minimind): filled by the training issue.
