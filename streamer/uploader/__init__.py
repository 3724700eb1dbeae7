"""An uploader process: owns the streams the supervisor assigns, uploads their chunks,
commits each to the checkpoint store in chunk order, and finishes a stream when told it is
idle. Its roles, one module each:

- process     its life: set up after the fork, the loop, the supervisor's commands, stop
- context     what every role works with, and the one way a failed step is retried
- tasks       the one door for background work, with its error boundary
- reports     what the threads hand back to the main thread, as values
- jobs        a stream as its uploader sees it: its phase, with guarded moves
- schedule    which stream goes next, and what its next step is
- sending     a chunk read, hashed and put in S3, in a sender thread
- ledger      chunks S3 confirmed, committed strictly in index order
- survey      a file compared with its chunks, ahead of completion or at it
- file_sha256 the whole file's sha256: fed by the senders in chunk order, taken on by a
              survey, or read whole
- assembly    the whole object in S3: part copies while live, the final join
- completion  a stream checked, reconciled, assembled and concluded
- retiring    retention's deletions, proven in S3 first
- pruning     a finished stream's chunks deleted once its whole object is proven
"""
