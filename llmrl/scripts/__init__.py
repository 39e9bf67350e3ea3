"""The jobs behind the `llmrl` command (llmrl/cli.py) and the recipes: each module's main(argv) parses the job's
flags and runs it."""
