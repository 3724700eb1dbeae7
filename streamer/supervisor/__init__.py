"""The supervisor: watches the directory, owns the table of streams, hands each stream to
exactly one uploader process, and keeps the uploaders alive. Its roles, one module each:

- daemon       its life: start, the loop, signals, uploaders' messages, a dead uploader
               replaced, stop
- readiness    what /readyz answers, and the gauges of the streams held
- context      what every role works with: settings, clock, log, watcher, checkpoint store
- startup      before the loop: directories, the store and the instance name, leases
- workers      the uploader processes: forked, told, reaped; the restart budget
- table        the table of active streams, their phases and owners, the path index
- discovery    file events and scans: streams discovered, grown, moved, lost, idle
- retirement   finished files, and which one retention deletes next
- prune_queue  the finished streams whose chunks are to go, asked for one at a time
- errands      one request about a stream awaiting its uploader's answer
- once         `run --once`: the streams found at start, and how each ended
"""
