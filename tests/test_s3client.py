"""The S3 client's own signing: each piece of a body sent in pieces, signed as AWS signs
it."""

from __future__ import annotations

from streamer.s3client import PieceSigner


def test_a_chunk_s_pieces_are_signed_as_aws_signs_them():
    """The example of AWS's "Signature Calculations for the Authorization Header:
    Transferring Payload in Multiple Chunks": 64 KiB of "a", 1 KiB of "a", the end."""
    authorization = (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class,"
        "Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    )
    headers = {"Authorization": authorization, "x-amz-date": "20130524T000000Z"}
    signer = PieceSigner("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", headers)
    assert [signer.piece(b"a" * 65536), signer.piece(b"a" * 1024), signer.piece(b"")] == [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
