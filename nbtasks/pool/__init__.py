"""The caller looking after its worker processes: starting them (`processes`), taking
warm ones from an earlier run (`warm`), watching and replacing them (`supervisor`),
and the shared memory that tells a stuck task from a busy one (`beacon`).

Nothing is imported here: a worker process imports `beacon` and `warm` alone."""
