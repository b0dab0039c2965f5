// Raw 16-bit little-endian mono PCM (response_format "pcm") wrapped in a WAV header, so the
// <audio> element can play it; the download keeps the raw bytes the server sent.
// `pcm` is a Blob or an ArrayBuffer.

export function pcmToWav(pcm, sampleRate) {
  const header = new ArrayBuffer(44);
  const view = new DataView(header);
  const ascii = (offset, text) => [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  const dataBytes = pcm.size ?? pcm.byteLength;
  ascii(0, "RIFF");
  view.setUint32(4, 36 + dataBytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true); // byte rate
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, dataBytes, true);
  return new Blob([header, pcm], { type: "audio/wav" });
}
