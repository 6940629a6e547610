"""What every part shares: settings (every setting, .env), errors and exit codes, the scripts' command
line and logging, atomic JSON state files, hashing, this process's memory and cgroup, progress output.
Imports nothing of the project above it.
"""
