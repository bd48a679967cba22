"""The worker side: ``python -m nbtasks.worker`` processes that run a job's items
(`__main__` the bootstrap, `process` a process's runs, `loop` one run), and the
``nbtasks worker`` command that lends a machine's processes to jobs (`command`).

Nothing is imported here: the bootstrap must patch the standard library first."""
