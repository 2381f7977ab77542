"""Row readers (torch-free): data entries (files, folders, Hub datasets) streamed as rows, every accepted row
shape normalised to chat form and checked with file and line, corpora, and IFEval's verifiable instructions
as rows carry them. Imports only `core`."""
