"""What the gateway lets through, in each direction (pure functions over wire bytes).

Agent -> server messages are relayed as the bytes the agent sent: batches are the bulk of the traffic and the
server validates them anyway, so the gateway only reads the field tag to count them. The Hello is the exception:
it is parsed, checked against the certificate and re-written to name the agent the certificate proves. Server ->
agent messages are parsed (they are small): server addresses are removed, because a relayed agent cannot reach a
management server and must keep reconnecting through its gateways; a Redirect is for the gateway, not the agent.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from opsmgr.protocol import agent_channel_pb2 as pb

_AGENT_FIELDS = {descriptor.number: name for name, descriptor in pb.AgentMessage.DESCRIPTOR.fields_by_name.items()}


@dataclass(frozen=True)
class Refusal:
    """Why the gateway refuses a stream: `reason` is one CamelCase word (a metric label), `message` a sentence."""

    reason: str
    message: str


@dataclass(frozen=True)
class EndRelay:
    """The server said something that ends this relayed stream (the agent reconnects through the gateway)."""

    reason: str


def agent_message_kind(raw: bytes) -> str:
    """The `body` of an encoded AgentMessage (`batch`, `heartbeat`, ...), read from its first field tag only."""
    tag, shift = 0, 0
    for byte in raw[:5]:
        tag |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return _AGENT_FIELDS.get(tag >> 3, "unknown")
        shift += 7
    return "empty" if not raw else "unknown"


def relayed_hello(raw: bytes, agent: str) -> bytes | Refusal:
    """The Hello to send upstream for the agent whose certificate names `agent`, or why the stream is refused.

    An empty Hello.agent means "the certificate's name"; any other name is an agent trying to speak for another.
    """
    try:
        message = pb.AgentMessage.FromString(raw)
    except DecodeError as exc:
        return Refusal("Malformed", f"the first message is not an AgentMessage ({exc})")
    body = message.WhichOneof("body")
    if body != "hello":
        return Refusal("NoHello", f"the first message was {body}, not Hello")
    claimed = message.hello.agent.strip().lower().removesuffix(".")
    if claimed and claimed != agent:
        return Refusal("ImpersonationRefused", f"Hello.agent = {message.hello.agent!r}, but the certificate is "
                                               f"{agent}'s: an agent speaks only for itself")
    message.hello.agent = agent
    return message.SerializeToString()


def toward_agent(raw: bytes) -> bytes | EndRelay:
    """The bytes to pass to the agent for one server message, or EndRelay when the gateway must act instead."""
    try:
        message = pb.ServerMessage.FromString(raw)
    except DecodeError:
        return raw  # the agent judges what it cannot parse; the gateway never invents or drops server messages
    body = message.WhichOneof("body")
    if body == "redirect":
        return EndRelay(f"the server redirected the stream to {message.redirect.server} "
                        f"({message.redirect.reason}); the gateway picks its own servers")
    if body == "welcome" and message.welcome.config.failover_servers:
        del message.welcome.config.failover_servers[:]
        return message.SerializeToString()
    if body == "config_update" and message.config_update.config.failover_servers:
        del message.config_update.config.failover_servers[:]
        return message.SerializeToString()
    return raw
