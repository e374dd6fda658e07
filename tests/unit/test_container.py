from unittest import mock

import eventlet
from eventlet.event import Event

from services.shutdown import arm_stop_deadline


def container():
    return mock.Mock(_died=Event(), _stop_deadline=None, service_name="votes")


def test_a_stop_that_hangs_is_cut_short():
    hung = container()
    arm_stop_deadline(hung, seconds=0.05)
    arm_stop_deadline(hung, seconds=0.05)  # armed once only
    eventlet.sleep(0.2)
    hung.kill.assert_called_once_with()


def test_a_stop_that_ends_in_time_is_left_alone():
    prompt = container()
    arm_stop_deadline(prompt, seconds=0.05)
    prompt._died.send(None)
    eventlet.sleep(0.2)
    prompt.kill.assert_not_called()
