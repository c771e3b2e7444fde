"""The claim auditor: does a change back what its messages claim? (`distill audit`)

Pure parts (diff parsing, claim parsing, checks, recurrence, report formats) are separate from the
edges (git, the test command, the index, the model, the workspace files). The package sits above
`runtime` and `index`: it uses their search and backends, they never import it."""
