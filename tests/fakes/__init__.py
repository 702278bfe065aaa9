"""Local fake provider servers (Twilio, WeChat, SMTP) bound to 127.0.0.1.

They let tests and benchmarks drive the real client libraries (``twilio``,
``httpx``, ``aiosmtplib``) end to end without any network beyond loopback.
"""
