//! The Vulkan and Vulkan SC loader files NVIDIA's installer writes: the
//! ICDs `/etc/vulkan/icd.d/nvidia_icd.json` (naming `libGLX_nvidia.so.0`)
//! and `/etc/vulkansc/icd.d/nvidia_icd_vksc.json` (`libnvidia-vksc-core`),
//! and the implicit layer `/etc/vulkan/implicit_layer.d/nvidia_layers.json`
//! (`libGLX_nvidia.so.0`). Their manifest types, `VULKAN_ICD_JSON` and
//! `VULKANSC_ICD_JSON`, are not OpenGL files (`manifest.c`), so
//! `--no-opengl-files` installs them while it leaves out the libraries
//! they name: the loader then fails every Vulkan application on such an
//! ICD, and an implicit layer is loaded into every one. Whether a file
//! dangles is read from the file itself (its `library_path`), not assumed.

use std::collections::HashSet;

use serde_json::Value;

use super::confined::{Confined, ReadError};
use super::record::Record;

/// A loader file is small; more is not one.
const MAX_JSON: u64 = 64 * 1024;

/// A JSON file in one of the loaders' folders.
pub fn is_loader_file(path: &str) -> bool {
    path.ends_with(".json")
        && [
            "/vulkan/icd.d/",
            "/vulkansc/icd.d/",
            "/vulkan/implicit_layer.d/",
            "/vulkan/explicit_layer.d/",
        ]
        .iter()
        .any(|dir| path.contains(dir))
}

/// The library an ICD or layer file names (`"ICD"`, `"layer"` or the
/// first of `"layers"`: `"library_path"`).
fn library_path(json: &Value) -> Option<&str> {
    let entry = json
        .get("ICD")
        .or_else(|| json.get("layer"))
        .or_else(|| json.get("layers")?.get(0))?;
    entry.get("library_path")?.as_str()
}

/// `libGLX_nvidia.so.0` → `libGLX_nvidia.so`: a library with that stem is
/// the one named, whatever the version after it (the record lists
/// `libnvidia-vksc-core.so.<version>`; ldconfig makes the `.so.1`).
fn stem(library: &str) -> &str {
    let name = library.rsplit('/').next().unwrap_or(library);
    match name.find(".so") {
        Some(i) => &name[..i + 3],
        None => name,
    }
}

/// Loader files the record lists, present in the container (`present`),
/// that name a library the record does not: each with that library.
pub fn dangling(
    c: &Confined,
    record: &Record,
    present: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, ReadError> {
    let installed: HashSet<&str> = record
        .files
        .iter()
        .map(|(p, _)| p.as_str())
        .chain(record.symlinks.iter().map(|(p, _)| p.as_str()))
        .map(|p| stem(p.rsplit('/').next().unwrap_or(p)))
        .collect();
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for (path, _) in &record.files {
        if !is_loader_file(path) || !present(path) || !seen.insert(path.as_str()) {
            continue;
        }
        let Some(bytes) = c.read_head(path, MAX_JSON)? else {
            continue;
        };
        // A file that is not what the installer wrote is the CRC check's to name.
        let Ok(json) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if let Some(library) = library_path(&json) {
            if !installed.contains(stem(library)) {
                found.push((path.clone(), crate::logging::bounded(library, 200)));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::confined::tests::{confined, tempdir};
    use crate::container::record::test_record;

    const ICD: &str = "/etc/vulkan/icd.d/nvidia_icd.json";
    const LAYERS: &str = "/etc/vulkan/implicit_layer.d/nvidia_layers.json";
    const VKSC: &str = "/etc/vulkansc/icd.d/nvidia_icd_vksc.json";

    #[test]
    fn loader_files() {
        for p in [ICD, LAYERS, VKSC, "/usr/share/vulkan/icd.d/nvidia_icd.json"] {
            assert!(is_loader_file(p), "{p}");
        }
        for p in [
            "/etc/OpenCL/vendors/nvidia.icd",
            "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
        ] {
            assert!(!is_loader_file(p), "{p}");
        }
    }

    /// As NVIDIA writes them: each names its library, and only those
    /// whose library a compute-only install left out dangle.
    #[test]
    fn what_names_a_library_that_is_not_installed() {
        let d = tempdir("vulkan");
        let write = |p: &str, text: &str| {
            let f = d.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, text).unwrap();
        };
        write(
            ICD,
            r#"{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3.277"}}"#,
        );
        write(
            LAYERS,
            r#"{"file_format_version": "1.0.0", "layer": {"name": "VK_LAYER_NV_optimus", "type": "INSTANCE", "library_path": "libGLX_nvidia.so.0"}}"#,
        );
        write(
            VKSC,
            r#"{"file_format_version": "1.0.1", "ICD": {"library_path": "libnvidia-vksc-core.so.1", "api_version": "1.0.14"}}"#,
        );
        let lib = "/usr/lib/x86_64-linux-gnu";
        let entries = format!("1: {ICD}\n1\n1: {LAYERS}\n2\n1: {VKSC}\n3\n");
        let compute = Record::parse(&test_record(&entries)).unwrap();
        let c = confined(&d);
        let found = dangling(&c, &compute, |_| true).unwrap();
        assert_eq!(
            found,
            [
                (ICD.to_string(), "libGLX_nvidia.so.0".to_string()),
                (LAYERS.to_string(), "libGLX_nvidia.so.0".to_string()),
                (VKSC.to_string(), "libnvidia-vksc-core.so.1".to_string()),
            ]
        );
        // With the graphics libraries (and vksc-core's, without its soname
        // link, which ldconfig makes), nothing dangles.
        let graphics = Record::parse(&test_record(&format!(
            "{entries}1: {lib}/libGLX_nvidia.so.550.54.14\n4\n1: {lib}/libnvidia-vksc-core.so.550.54.14\n5\n"
        )))
        .unwrap();
        assert!(dangling(&c, &graphics, |_| true).unwrap().is_empty());
        // Removed already: nothing to say.
        assert!(dangling(&c, &compute, |_| false).unwrap().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
