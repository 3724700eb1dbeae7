"""One classification and one backoff for every retry site of the uploader."""

import select

import msgspec
import pytest

from streamer.failures import Backoff, NotInS3, classify, hint
from streamer.fileio import SourceChanged
from streamer.logs import MAX_ERROR, describe
from streamer.messages import Retired, S3State
from streamer.objectstore import UploadGone


def test_one_backoff_counts_schedules_and_resets():
    backoff = Backoff()
    delay = backoff.failed("transient", now=100.0, base=1.0, cap=8.0)
    assert 0 <= delay <= 1.0 and backoff.attempt == 1 and backoff.due == 100.0 + delay
    # A rejection waits the whole cap, never in a hot loop.
    assert backoff.failed("rejected", now=200.0, base=1.0, cap=8.0) == 8.0
    assert (backoff.attempt, backoff.due) == (2, 208.0)
    backoff.succeeded()
    backoff.retry_now()
    assert (backoff.attempt, backoff.due) == (0, 0.0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectionRefusedError("refused"), "transient"),
        (SourceChanged("the file is another"), "transient"),
        (UploadGone("the assembly upload expired"), "transient"),
        (NotInS3("chunk 3 is missing"), "rejected"),
        (ValueError("a bug"), "failed"),
    ],
)
def test_errors_are_classified_by_what_retrying_can_change(error, kind):
    assert classify(error) == kind


def test_hints_say_what_an_operator_can_do():
    assert "put the chunk back" in hint(NotInS3("gone"), rejected=True)["hint"]
    assert "s3.ca_file" in hint(OSError("certificate verify failed"), rejected=False)["hint"]
    assert hint(OSError("reset"), rejected=False) == {}


def test_an_error_is_one_bounded_line_that_fits_one_pipe_write():
    """A proxy answering with a whole HTML page (or a message of any length) is cut."""
    page = "<html>\n<body>\n" + "<p>Service Unavailable &mdash; é</p>\n" * 5000 + "</body></html>"
    text = describe(ConnectionError(page))
    assert "\n" not in text and text.startswith("ConnectionError: <html> <body>")
    assert len(text) <= MAX_ERROR + 40 and text.endswith("more characters)")
    for event in (
        S3State(reachable=False, error=text),
        Retired(stream_id="s" * 200, deleted=False, kept_because=text),
    ):
        assert len(msgspec.msgpack.encode(event)) < select.PIPE_BUF
    assert describe(ValueError("short")) == "ValueError: short"
