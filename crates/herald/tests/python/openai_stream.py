"""Streams a chat completion through Herald's OpenAI-compatible endpoint with
the official `openai` SDK and prints the reassembled text, then the stream id
Herald recorded it under (from the response header)."""
import sys

from openai import OpenAI

base_url, prompt = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="unused-by-herald", max_retries=0, timeout=30)

# The raw response gives access to Herald's headers as well as the stream.
raw = client.chat.completions.with_raw_response.create(
    model="herald-offline",
    messages=[{"role": "user", "content": prompt}],
    stream=True,
)
stream_id = raw.headers.get("x-herald-stream-id")
text = []
finish = None
for chunk in raw.parse():
    if chunk.choices:
        delta = chunk.choices[0].delta
        if delta.content:
            text.append(delta.content)
        if chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
print("".join(text), end="")
print("\n---")
print(finish)
print(stream_id)
