"""Look at the dead-letter queue, and replay it.

    python -m services.votes.dead_letters show [--config config.yml]
    python -m services.votes.dead_letters replay [--config config.yml]

``show`` prints each message's reason and body and leaves it in place.
``replay`` publishes each one back to the exchange and routing key it first
came to (confirmed), then removes it; a message still bad is dead-lettered
again by the votes service.
"""
import argparse
import json
import sys

import yaml
from kombu import Connection, Exchange, Producer
from nameko.cli.main import setup_yaml_parser

from services.votes.entrypoints import DEAD_LETTER_QUEUE

REASON = "x-dead-letter-reason"
ORIGIN_EXCHANGE = "x-original-exchange"
ORIGIN_ROUTING_KEY = "x-original-routing-key"
OUR_HEADERS = (REASON, ORIGIN_EXCHANGE, ORIGIN_ROUTING_KEY, "x-dead-lettered-at")


def _take_all(channel):
    """Every message in the queue, unacked (they return when the channel
    closes, unless acked)."""
    DEAD_LETTER_QUEUE.bind(channel).declare()
    messages = []
    while True:
        message = channel.basic_get(DEAD_LETTER_QUEUE.name, no_ack=False)
        if message is None:
            return messages
        messages.append(message)


def _text(body):
    # py-amqp decodes a body whose content_encoding it knows
    return body if isinstance(body, str) else body.decode("utf-8", "replace")


def show(connection, out=sys.stdout):
    channel = connection.channel()
    messages = _take_all(channel)
    for message in messages:
        headers = message.headers or {}
        out.write(json.dumps({
            "reason": headers.get(REASON),
            "routingKey": headers.get(ORIGIN_ROUTING_KEY),
            "body": _text(message.body),
        }) + "\n")
    channel.close()  # all of them go back to the queue
    return len(messages)


def replay(connection):
    channel = connection.channel()
    publish_channel = connection.channel()
    publish_channel.confirm_select()
    producer = Producer(publish_channel)
    messages = _take_all(channel)
    for message in messages:
        headers = dict(message.headers or {})
        exchange = Exchange(headers.get(ORIGIN_EXCHANGE) or "", type="topic",
                            durable=True, no_declare=True)
        routing_key = headers.get(ORIGIN_ROUTING_KEY) or ""
        for name in OUR_HEADERS:
            headers.pop(name, None)
        producer.publish(
            message.body, exchange=exchange, routing_key=routing_key,
            headers=headers, delivery_mode=2, mandatory=True,
            content_type=message.content_type or "application/json",
            content_encoding=message.content_encoding or "utf-8",
        )
        channel.basic_ack(message.delivery_tag)
    channel.close()
    return len(messages)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("show", "replay"))
    parser.add_argument("--config", default="config.yml")
    args = parser.parse_args(argv)
    setup_yaml_parser()
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    with Connection(config["AMQP_URI"], connect_timeout=5) as connection:
        if args.action == "show":
            count = show(connection)
            print("{} dead-lettered message(s)".format(count), file=sys.stderr)
        else:
            count = replay(connection)
            print("replayed {} message(s)".format(count), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
