"""Entry points (run.py, pipeline.py) and their YAML configs; tiny/ holds the CPU defaults."""
