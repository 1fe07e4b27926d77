// The Prometheus text format, read into samples; enough for the console's totals.

// [{name, labels: {k: v}, value}] of every sample line.
export function parse(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const brace = line.indexOf("{");
    const space = line.lastIndexOf(" ");
    if (space < 0) continue;
    const value = Number(line.slice(space + 1));
    let name = line.slice(0, space);
    const labels = {};
    if (brace >= 0 && brace < space) {
      name = line.slice(0, brace);
      const inner = line.slice(brace + 1, line.lastIndexOf("}"));
      for (const m of inner.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[m[1]] = m[2].replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
      }
    }
    samples.push({ name, labels, value });
  }
  return samples;
}

// The sum of a metric's samples (every label set), or null when the server does not serve it.
export function total(samples, name, where) {
  let sum = null;
  for (const s of samples) {
    if (s.name !== name) continue;
    if (where && !Object.entries(where).every(([k, v]) => s.labels[k] === v)) continue;
    sum = (sum || 0) + s.value;
  }
  return sum;
}

// {label value: sum} of a metric, by one label.
export function by(samples, name, label) {
  const out = {};
  for (const s of samples) {
    if (s.name === name) out[s.labels[label]] = (out[s.labels[label]] || 0) + s.value;
  }
  return out;
}
