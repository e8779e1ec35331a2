"""`python -m <service>`: uvicorn on the service's address, trusting forwarded client addresses only from
the gateway.

FORWARDED_ALLOW_IPS lists the addresses whose X-Forwarded-For is believed (the gateway's source address;
`make run` sets 127.0.0.2, where nginx connects from). Unset or empty: nobody's, so a client that talks to a
service directly is always seen at its connection's address. (uvicorn's own default would trust loopback,
where local clients come from too.)

uvicorn's access log is off: servicekit.request_trace logs each request instead, in the process's format
(JSON with LOG_FORMAT=json) and with its request id and trace id.
"""

from __future__ import annotations

import os

import uvicorn


def serve(factory: str, *, host: str, port: int) -> None:
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "").strip()
    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        access_log=False,
    )
