"""The web client in a real browser: two (then three) people chat through it, live.

The module shares one Chromium and one server process; each person is a browser context of
their own (cookies, localStorage). Tests run in order and build on each other: sign-up, a
direct chat, edits/deletes/reactions, typing, unread badges, a group, a server restart.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support import PASSWORD, GraphQLClient, ServerProcess, unique_name

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 15_000
# While the server is down, Chromium itself reports the refused connections on the console.
RESTART_NOISE = re.compile(r"WebSocket connection to .* failed|ERR_CONNECTION_REFUSED")


@dataclass
class Person:
    """One person in a browser context of their own, and what their page did."""

    name: str
    context: Any
    page: Any
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def console(self, kind: str, text: str) -> None:
        if kind == "error":
            self.errors.append(text)

    def room(self, title: str) -> Any:
        return self.page.locator(f'#rooms .room[data-name="{title}"]')

    def message(self, text: str) -> Any:
        return self.page.locator("#log .message", has=self.page.locator(".body", has_text=text))


@dataclass
class Chat:
    server: ServerProcess
    people: dict[str, Person]
    browser: Any

    async def person(self, key: str) -> Person:
        """A new person in a new browser context, signed up through the page."""
        context = await self.browser.new_context(viewport={"width": 1100, "height": 700})
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()
        person = Person(unique_name(key), context, page)
        page.on("console", lambda m: person.console(m.type, m.text))
        page.on("pageerror", lambda e: person.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: person.urls.append(r.url))
        page.on("websocket", lambda ws: person.urls.append(ws.url))
        await page.goto(self.server.url + "/")
        await page.locator("#auth-name").fill(person.name)
        await page.locator("#auth-password").fill(PASSWORD)
        await page.locator("#sign-up").click()
        await expect(page.locator("#me")).to_have_text(person.name)
        self.people[key] = person
        return person


def expect(locator: Any) -> Any:
    from playwright.async_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect(locator)


async def snap(person: Person, folder: Path, name: str) -> None:
    await person.page.screenshot(path=str(folder / f"{name}.png"))


async def send(person: Person, text: str) -> None:
    await person.page.locator("#message-input").fill(text)
    await person.page.locator("#send").click()
    await expect(person.message(text)).to_have_count(1)


async def open_room(person: Person, title: str) -> None:
    await person.room(title).click()
    await expect(person.page.locator("#room-title")).to_have_text(title)


@pytest.fixture(scope="module")
async def chat(browser: Any, web_server: ServerProcess) -> AsyncIterator[Chat]:
    shared = Chat(web_server, {}, browser)
    yield shared
    for person in shared.people.values():
        await person.context.close()


@pytest.fixture(autouse=True)
async def clean_console_and_loopback_only(chat: Chat) -> AsyncIterator[None]:
    """After each test: no console errors, and no request that left loopback."""
    yield
    for person in chat.people.values():
        errors, person.errors[:] = list(person.errors), []
        assert errors == [], f"{person.name}'s console: {errors}"
        hosts = {urlsplit(url).hostname for url in person.urls if not url.startswith("data:")}
        assert hosts <= {"127.0.0.1"}, f"{person.name}'s page reached {hosts}"


async def test_the_page_is_served_offline_under_a_strict_csp(chat: Chat) -> None:
    client = GraphQLClient(chat.server.url)
    try:
        response = await client.http.get("/")
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy
        assert "unsafe-inline" not in policy
        assert "connect-src 'self';" in policy
        assert '<script type="module" src="/web/js/app.js">' in response.text
        module = await client.http.get("/web/vendor/wonka-6.3.6/dist/wonka.mjs")
        assert module.headers["content-type"].startswith("text/javascript")
        graphiql = await client.http.get("/graphql", headers={"Accept": "text/html"})
        assert "graphiql" in graphiql.text.lower()
    finally:
        await client.aclose()


async def test_two_people_sign_up_and_chat_directly_both_ways(chat: Chat, tmp_path: Path) -> None:
    stranger = await chat.browser.new_context()  # the sign-in screen, for its screenshot
    page = await stranger.new_page()
    await page.goto(chat.server.url + "/")
    await page.locator("#auth-name").fill("someone")
    await page.screenshot(path=str(tmp_path / "sign-in.png"))
    await stranger.close()
    alice = await chat.person("alice")
    bob = await chat.person("bob")

    await alice.page.locator("#direct-name").fill(bob.name)
    await alice.page.locator("#new-direct button").click()
    await expect(alice.page.locator("#room-title")).to_have_text(bob.name)
    await send(alice, "hello bob")

    # Bob's list learns of the new room live (inboxEvents): last message, unread, presence.
    room = bob.room(alice.name)
    await expect(room.locator(".badge")).to_have_text("1")
    await expect(room.locator(".preview")).to_have_text(f"{alice.name}: hello bob")
    await expect(room.locator(".dot")).to_have_class(re.compile(r"\bonline\b"))
    await snap(bob, tmp_path, "room-list")

    await open_room(bob, alice.name)
    await expect(bob.message("hello bob")).to_have_count(1)
    await expect(bob.page.locator("#room-presence")).to_have_text("online")
    await send(bob, "hi alice")
    await expect(alice.message("hi alice")).to_have_count(1)
    # Bob read alice's message as it scrolled into view: alice sees the tick.
    await expect(alice.message("hello bob").locator(".seen")).to_have_text(f"✓✓ seen by {bob.name}")
    await expect(alice.page.locator("#room-presence")).to_have_text("online")
    await snap(alice, tmp_path, "direct-room")


async def test_an_edit_a_delete_and_a_reaction_are_seen_live(chat: Chat, tmp_path: Path) -> None:
    alice, bob = chat.people["alice"], chat.people["bob"]
    await send(alice, "see you at noun")
    await expect(bob.message("see you at noun")).to_have_count(1)

    mine = alice.message("see you at noun")
    await mine.hover()
    await mine.locator(".edit").click()
    await alice.page.locator(".edit-input").fill("see you at noon")
    await alice.page.locator(".edit-form button[type=submit]").click()
    edited = bob.message("see you at noon")
    await expect(edited.locator(".edited")).to_have_text("(edited)")

    await edited.hover()
    await edited.locator('.add-reaction[data-emoji="🎉"]').click()
    await expect(alice.message("see you at noon").locator(".reaction")).to_have_text("🎉 1")
    await expect(edited.locator(".reaction.me")).to_have_text("🎉 1")
    await snap(bob, tmp_path, "reactions")

    await send(alice, "wrong chat, sorry")
    await expect(bob.message("wrong chat, sorry")).to_have_count(1)
    doomed = alice.message("wrong chat, sorry")
    await doomed.hover()
    await doomed.locator(".delete").click()
    await expect(bob.page.locator("#log .message.deleted .body")).to_have_text("message deleted")
    await expect(bob.message("wrong chat, sorry")).to_have_count(0)


async def test_typing_is_shown_and_cleared(chat: Chat) -> None:
    alice, bob = chat.people["alice"], chat.people["bob"]
    await bob.page.locator("#message-input").fill("thinking")
    await expect(alice.page.locator("#typing")).to_have_text(f"{bob.name} is typing…")
    await bob.page.locator("#message-input").fill("")
    await expect(alice.page.locator("#typing")).to_have_text("")


async def test_an_unread_badge_clears_on_reading(chat: Chat, tmp_path: Path) -> None:
    alice, bob = chat.people["alice"], chat.people["bob"]
    await bob.page.locator("#show-sessions").click()  # bob leaves the room for another screen
    await expect(bob.page.locator("#sessions .session")).to_have_count(1)
    await expect(bob.page.locator('#sessions .session[data-current="true"]')).to_have_count(1)
    await snap(bob, tmp_path, "sessions")

    await send(alice, "are you there?")
    await send(alice, "hello?")
    badge = bob.room(alice.name).locator(".badge")
    await expect(badge).to_have_text("2")

    await open_room(bob, alice.name)
    await expect(bob.message("hello?")).to_have_count(1)
    await expect(alice.message("hello?").locator(".seen")).to_have_text(f"✓✓ seen by {bob.name}")
    await bob.page.locator("#show-sessions").click()
    await expect(bob.room(alice.name)).to_have_count(1)
    await expect(badge).to_have_count(0)


async def test_a_group_of_three(chat: Chat, tmp_path: Path) -> None:
    alice, bob = chat.people["alice"], chat.people["bob"]
    carol = await chat.person("carol")

    await alice.page.locator("#new-group summary").click()
    await alice.page.locator("#group-name").fill("Launch")
    await alice.page.locator("#group-members").fill(bob.name)
    await alice.page.locator("#new-group button").click()
    await expect(alice.page.locator("#room-title")).to_have_text("Launch")

    await alice.page.locator("#toggle-members").click()
    await alice.page.locator(".add-members-input").fill(carol.name)
    await alice.page.locator(".add-members button").click()
    await expect(alice.page.locator("#members-panel .member")).to_have_count(3)
    await alice.page.locator(".rename-input").fill("Launch day")
    await alice.page.locator(".rename button").click()
    await expect(alice.page.locator("#room-title")).to_have_text("Launch day")

    await open_room(carol, "Launch day")
    await open_room(bob, "Launch day")
    await send(carol, "hi both")
    await expect(alice.message("hi both")).to_have_count(1)
    await expect(bob.message("hi both")).to_have_count(1)
    await send(bob, "hi carol")
    await expect(carol.message("hi carol")).to_have_count(1)
    await expect(alice.page.locator("#log .system", has_text="renamed the room")).to_have_count(1)
    await snap(alice, tmp_path, "group")

    # Bob is removed: the room leaves his list; carol leaves on her own.
    member = alice.page.locator(f'#members-panel .member[data-name="{bob.name}"]')
    await member.locator(".remove-member").click()
    await expect(bob.room("Launch day")).to_have_count(0)
    await carol.page.locator("#toggle-members").click()
    await carol.page.locator("#members-panel .leave").click()
    await expect(carol.room("Launch day")).to_have_count(0)
    await expect(alice.page.locator("#log .system", has_text=f"{carol.name} left")).to_have_count(1)
    await expect(alice.page.locator("#members-panel .member")).to_have_count(1)


async def test_signing_out_elsewhere_ends_the_session_here(chat: Chat, tmp_path: Path) -> None:
    carol = chat.people["carol"]
    other = await carol.context.new_page()  # a second tab of the same browser: one session
    other.on("console", lambda m: carol.console(m.type, m.text))
    other.on("pageerror", lambda e: carol.errors.append(f"uncaught: {e}"))
    await other.goto(chat.server.url + "/")
    await expect(other.locator("#me")).to_have_text(carol.name)
    await other.locator("#sign-out").click()
    await expect(other.locator("#auth")).to_be_visible()
    # The server closes the session's sockets with 4401: the first tab goes to sign-in.
    await expect(carol.page.locator("#auth-error")).to_have_text(
        "Your session has ended. Please sign in again."
    )
    await snap(carol, tmp_path, "session-ended")
    await other.close()


async def test_a_server_restart_reconnects_and_shows_every_message_once(
    chat: Chat, tmp_path: Path
) -> None:
    alice, bob = chat.people["alice"], chat.people["bob"]
    await open_room(alice, bob.name)
    await open_room(bob, alice.name)
    await send(alice, "before the restart")
    await expect(bob.message("before the restart")).to_have_count(1)
    shown_before = await bob.page.locator("#log .message").count()

    await chat.server.stop()  # SIGTERM: sockets close with 1012
    await expect(bob.page.locator("#status")).to_be_visible()
    await expect(bob.page.locator("#status")).to_have_text("Reconnecting…")
    await snap(bob, tmp_path, "reconnecting")
    await chat.server.start()

    # Sent the moment the server is back, likely before bob's client reconnects: bob's room
    # resumes from its last cursor and gets them from the log.
    client = GraphQLClient(chat.server.url)
    try:
        await client.sign_in(alice.name)
        room = await client.data(
            "query ($with: String!) { directRoom(with: $with) { id } }", {"with": bob.name}
        )
        for n in range(1, 4):
            await client.data(
                "mutation ($r: ID!, $d: String!) { sendMessage(roomId: $r, data: $d) { id } }",
                {"r": room["directRoom"]["id"], "d": f"after the restart {n}"},
            )
    finally:
        await client.aclose()
    await send(alice, "and from the page")

    for person in (alice, bob):
        await expect(person.page.locator("#status")).to_be_hidden()
        for text in ["before the restart", "after the restart 3", "and from the page"]:
            await expect(person.message(text)).to_have_count(1)
        for n in (1, 2):
            await expect(person.message(f"after the restart {n}")).to_have_count(1)
    await expect(bob.page.locator("#log .message")).to_have_count(shown_before + 4)
    seqs = [
        int(s)
        for s in await bob.page.locator("#log [data-seq]").evaluate_all(
            "els => els.map(e => e.dataset.seq)"
        )
    ]
    assert seqs == sorted(set(seqs)), seqs  # in order, none twice
    await snap(bob, tmp_path, "after-restart")
    for person in chat.people.values():
        person.errors[:] = [e for e in person.errors if not RESTART_NOISE.search(e)]
