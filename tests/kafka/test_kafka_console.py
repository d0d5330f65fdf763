"""docs/kafka.md, run: its example messages go through Kafka's own console tools (as
`scripts/kafka-local` runs them) to a real `streamfusion serve`, and what comes back has the
documented form."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import SCRIPT
from kafkatools import SMALL_MODEL, Serve, create_topics

pytestmark = pytest.mark.kafka

DOC = Path(__file__).resolve().parents[2] / "docs" / "kafka.md"
TOOL_TIMEOUT = 300  # seconds: the first run fetches the tools' jars with mvn


def doc_block(tag: str) -> list[str]:
    """The lines of the fenced block of docs/kafka.md whose info string ends with ``tag``."""
    m = re.search(rf"```\w+ {tag}\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"no {tag} block in {DOC}"
    return m.group(1).strip().splitlines()


def tool(bootstrap: str, name: str, *args: str, stdin: str = "") -> str:
    proc = subprocess.run([str(SCRIPT), name, "--bootstrap", bootstrap, *args], input=stdin,
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_documented_messages_through_the_console_tools(kafka_bootstrap, tmp_path):
    tag = uuid.uuid4().hex[:8]
    events, clicks, scores, dead = (f"{t}-{tag}" for t in ("events", "clicks", "scores", "dead"))
    tool(kafka_bootstrap, "topics", "--create", "--topic", events)
    create_topics(kafka_bootstrap, [clicks, scores, dead])
    assert events in tool(kafka_bootstrap, "topics", "--list").split()

    inputs = doc_block("input-events")
    bad = '["not", "an", "object"]'
    tool(kafka_bootstrap, "console-producer", "--topic", events, stdin="\n".join([*inputs, bad]))
    labels = [f"{json.loads(v)['id']}|{v}" for v in doc_block("labels")]
    tool(kafka_bootstrap, "console-producer", "--topic", clicks, "--property", "parse.key=true",
         "--property", "key.separator=|", stdin="\n".join(labels))

    serve = Serve(kafka_bootstrap, ["--input-topic", events, "--label-topic", clicks,
                                    "--output-topic", scores, "--dead-letter-topic", dead,
                                    "--group-id", f"g-{tag}", "--exit-when-idle", "4",
                                    *SMALL_MODEL], tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()

    out = tool(kafka_bootstrap, "console-consumer", "--topic", scores, "--from-beginning",
               "--max-messages", str(len(inputs)), "--timeout-ms", "60000",
               "--property", "print.key=true").splitlines()
    documented = json.loads(doc_block("output")[0])
    ids = [json.loads(v)["id"] for v in inputs]
    assert [line.split("\t", 1)[0] for line in out] == ids  # keyed by id, in order
    for line, ident in zip(out, ids, strict=True):
        value = json.loads(line.split("\t", 1)[1])
        assert value.keys() == documented.keys() and value["id"] == ident
        assert 0 < value["p_click"] < 1
        assert value["margin"] == pytest.approx(value["base_margin"] + value["residual_margin"],
                                                abs=1e-5)

    letters = tool(kafka_bootstrap, "console-consumer", "--topic", dead, "--from-beginning",
                   "--max-messages", "1", "--timeout-ms", "60000",
                   "--property", "print.headers=true").splitlines()
    # the documented example, with this test's topic name
    headers, value = doc_block("dead-letter")
    want = re.sub(r"source=events", f"source={events}", headers.split(":", 1)[1].strip())
    want = want.replace("error=", "error:").replace("source=", "source:").replace(", ", ",")
    assert letters == [f"{want}\t{bad}"]
    assert value.split(":", 1)[1].strip() == bad
