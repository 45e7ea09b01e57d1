//! Just enough PNG decoding for the report's screenshot (8-bit RGB or RGBA, not interlaced): chunks,
//! zlib through flate2 (already in the build for ingest, with the same features, so the tests add no
//! second feature set of the compression crates), and the five scanline filters.

use flate2::read::ZlibDecoder;
use std::io::Read;

pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Samples per pixel: 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    /// `height` rows of `width * channels` bytes.
    pub pixels: Vec<u8>,
}

pub fn decode(bytes: &[u8]) -> Result<Image, String> {
    let body = bytes
        .strip_prefix(b"\x89PNG\r\n\x1a\n")
        .ok_or("not a PNG file")?;
    let (mut at, mut header, mut idat) = (0, None, Vec::new());
    while at + 8 <= body.len() {
        let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        let kind = &body[at + 4..at + 8];
        let data = body.get(at + 8..at + 8 + len).ok_or("truncated chunk")?;
        match kind {
            b"IHDR" => header = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    let h = header.ok_or("no IHDR chunk")?;
    let width = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
    let height = u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize;
    let channels = match (h[8], h[9], h[12]) {
        (8, 2, 0) => 3,
        (8, 6, 0) => 4,
        (depth, colour, interlace) => {
            return Err(format!(
                "unsupported PNG: bit depth {depth}, colour type {colour}, interlace {interlace}"
            ));
        }
    };
    let mut raw = Vec::new();
    ZlibDecoder::new(idat.as_slice())
        .read_to_end(&mut raw)
        .map_err(|e| format!("IDAT: {e}"))?;
    let stride = width * channels;
    if raw.len() != height * (stride + 1) {
        return Err(format!(
            "IDAT holds {} bytes, expected {}",
            raw.len(),
            height * (stride + 1)
        ));
    }
    let mut pixels = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels {
                pixels[y * stride + x - channels]
            } else {
                0
            };
            let b = if y > 0 {
                pixels[(y - 1) * stride + x]
            } else {
                0
            };
            let c = if x >= channels && y > 0 {
                pixels[(y - 1) * stride + x - channels]
            } else {
                0
            };
            let predictor = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((a as u16 + b as u16) / 2) as u8,
                4 => paeth(a, b, c),
                f => return Err(format!("row {y}: unknown filter {f}")),
            };
            pixels[y * stride + x] = line[x].wrapping_add(predictor);
        }
    }
    Ok(Image {
        width,
        height,
        channels,
        pixels,
    })
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = a as i16 + b as i16 - c as i16;
    let (pa, pb, pc) = (
        (p - a as i16).abs(),
        (p - b as i16).abs(),
        (p - c as i16).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}
