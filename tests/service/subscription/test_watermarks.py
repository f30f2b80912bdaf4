"""The watermarks: moved over ids published in order, waiting for the ones handled late, and a
poll asked for when an id still waits after GAP_WAIT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import service.subscription.watermarks as watermarks_module
from model.joinmap import JoinMap
from model.pool import TeleClients
from service.subscription.state import Shared
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import NEWS_ID


async def test_the_watermark_waits_for_ids_handled_out_of_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watermarks_module, "GAP_WAIT", 0.05)
    joinmap = JoinMap(tmp_path / "j.db")
    joinmap.record_join(NEWS_ID, "acc1001", type="channel")
    joinmap.set_last_message_id(NEWS_ID, 5)
    shared = Shared(
        TeleClients([]), joinmap, None,  # type: ignore[arg-type]
        media_queue=None, clock=time.time, recent_size=10,
    )  # fmt: skip
    marks, polls = shared.watermarks, shared.polls
    polls.take()  # the first round's "every chat", as the poll loop takes it at start
    marks.advance(NEWS_ID, 7)  # 6 is still being handled by another task
    assert joinmap.last_message_id(NEWS_ID) == 5
    marks.advance(NEWS_ID, 6)
    assert joinmap.last_message_id(NEWS_ID) == 7
    assert marks.ahead(NEWS_ID) == set()
    # The timer armed while 7 waited for 6 fires (it unlists itself) and finds no gap.
    assert marks.gap_check_armed(NEWS_ID)
    await wait_for(lambda: not marks.gap_check_armed(NEWS_ID), within=5, what="the gap check")
    assert not polls.pending  # no gap: no poll
    marks.advance(NEWS_ID, 9)  # 8 never comes: a lost push
    assert joinmap.last_message_id(NEWS_ID) == 7
    assert marks.ahead(NEWS_ID) == {9}
    await wait_for(lambda: polls.pending, within=5, what="a poll of the gap")
    assert polls.take() == (False, {NEWS_ID})
    joinmap.close()
