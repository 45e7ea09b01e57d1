"""The official `openai` client against a running `tardbot-pipeline serve`.

    check_openai.py BASE_URL MODEL

Prints one JSON object with what each call returned; the Rust test asserts on it. Asks: a plain chat,
the same streamed, a request with `tools` (answered with `tool_calls`), then the follow-up carrying
the tool's result.
"""
import json
import sys

from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
out = {}

out["models"] = [m.id for m in client.models.list()]

r = client.chat.completions.create(
    model=model, temperature=0, messages=[{"role": "user", "content": "Say hello."}]
)
out["plain"] = {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                "completion_tokens": r.usage.completion_tokens}

pieces = []
finish = None
usage = None
for chunk in client.chat.completions.create(
    model=model, temperature=0, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "Say hello."}],
):
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {"pieces": pieces, "finish": finish, "completion_tokens": usage}

tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
r = client.chat.completions.create(model=model, temperature=0, messages=messages, tools=tools)
msg = r.choices[0].message
calls = msg.tool_calls or []
out["tools"] = {"finish": r.choices[0].finish_reason, "content": msg.content,
                "calls": [{"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)}
                          for c in calls]}
if calls:
    messages.append(msg.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "{\"temp_c\": 18}"})
    r = client.chat.completions.create(model=model, temperature=0, messages=messages, tools=tools)
    out["follow_up"] = {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason}

print(json.dumps(out))
