"""The subscription flow's parts, composed by `service.subscriber.Subscriber`.

    state.py       Shared: what the parts share (pool, join map, publisher, clock, the recent
                   set, the counters, the API lock, the poll queue, the watermarks)
    watermarks.py  Watermarks: "every message up to here was published", per chat (and per
                   account of a basic group), and the gap check behind it
    joins.py       Joins: the API's subscribe/unsubscribe, keeping the join map true
    intake.py      Intake: Telegram's updates → message and subscription events, once
    gappoll.py     GapPoller: reads what the updates missed (the interval, a gap, a reconnect)
    takeover.py    Takeover: a banned or logged-out account's chats joined by another account
    accounts.py    AccountWatch: follows the accounts' states (reconnects, bans, recoveries)

Arrows: intake → joins (a kick); gappoll → intake (a page is published as updates are);
takeover → joins (a takeover is a join); accounts → takeover. Each reads and writes the
`Shared` object it is given, and nothing else of the others.
"""
