//! Folders of images, one subfolder per class, through the `image` crate (PNG, JPEG, BMP).

use std::path::{Path, PathBuf};

use super::{Features, FileData, FileOptions, RawLabels, assemble, malformed};
use crate::data::DataError;
use crate::data::resize::bilinear_into;

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp"];

fn listing(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension().is_some_and(|e| {
            EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
        })
}

pub(super) fn load_folder(root: &Path, opts: &FileOptions) -> Result<FileData, DataError> {
    if let Some(c) = opts.channels
        && c != 1
        && c != 3
    {
        return Err(malformed(root, format!("channels = {c}: must be 1 or 3")));
    }
    let classes: Vec<PathBuf> = listing(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Err(malformed(
            root,
            "no class folders: expected one subfolder of images per class",
        ));
    }
    let mut decoded = Vec::new();
    let mut names = Vec::new();
    for dir in &classes {
        let class = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let files: Vec<PathBuf> = listing(dir)?.into_iter().filter(|p| is_image(p)).collect();
        if files.is_empty() {
            return Err(malformed(
                dir,
                format!("empty class folder: no {} images", EXTENSIONS.join("/")),
            ));
        }
        for f in files {
            let img = image::ImageReader::open(&f)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| malformed(&f, format!("unreadable image: {e}")))?
                .decode()
                .map_err(|e| malformed(&f, format!("unreadable image: {e}")))?;
            decoded.push((f, img));
            names.push(class.clone());
        }
    }
    let gray = decoded.iter().all(|(_, i)| !i.color().has_color());
    let c = opts.channels.unwrap_or(if gray { 1 } else { 3 });
    let (w0, h0) = (
        decoded[0].1.width() as usize,
        decoded[0].1.height() as usize,
    );
    let (oh, ow) = opts.image_size.map_or((h0, w0), |s| (s, s));
    let mut values = Vec::with_capacity(decoded.len() * c * oh * ow);
    for (f, img) in &decoded {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if opts.image_size.is_none() && (w, h) != (w0, h0) {
            return Err(malformed(
                f,
                format!(
                    "{w}×{h}, where {} is {w0}×{h0}: give image_size to resize them all",
                    decoded[0].0.display()
                ),
            ));
        }
        // Planes of [0, 1] values, channel by channel.
        let planar: Vec<f32> = if c == 1 {
            img.to_luma8()
                .into_raw()
                .into_iter()
                .map(|v| f32::from(v) / 255.0)
                .collect()
        } else {
            let rgb = img.to_rgb8().into_raw();
            (0..3)
                .flat_map(|ch| {
                    rgb.iter()
                        .skip(ch)
                        .step_by(3)
                        .map(|&v| f32::from(v) / 255.0)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        if (h, w) == (oh, ow) {
            values.extend_from_slice(&planar);
        } else {
            bilinear_into(&planar, c, (h, w), (oh, ow), &mut values);
        }
    }
    let mode = if c == 1 { "grayscale" } else { "RGB" };
    let resized = opts
        .image_size
        .map_or(String::new(), |s| format!(", resized to {s}×{s}"));
    assemble(
        root,
        root,
        Features {
            shape: vec![c, oh, ow],
            values,
            scaling: format!("{mode} bytes divided by 255{resized}"),
        },
        RawLabels::Names(names),
    )
}
