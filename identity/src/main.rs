//! `identity`: make and check the mesh PKI from the command line (the project's stand-in for
//! `step certificate create` in the tutorial).

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use identity::{
    generate::{self, Validity},
    CertInfo, Identity, LeafOptions, Signer, TrustAnchors, Usage,
};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

#[derive(Parser)]
#[command(
    name = "identity",
    version,
    about = "Make and check mesh trust anchors, issuers and workload certificates"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a self-signed trust anchor (CA:TRUE, pathlen 1, ECDSA P-256).
    Anchor {
        #[command(flatten)]
        out: Output,
        /// Subject common name.
        #[arg(long, default_value = generate::DEFAULT_ANCHOR_NAME)]
        name: String,
        #[command(flatten)]
        validity: ValidityArgs<87600>,
    },
    /// Make an issuer (intermediate CA, pathlen 0) signed by a trust anchor.
    Issuer {
        #[command(flatten)]
        signer: SignerArgs,
        #[command(flatten)]
        out: Output,
        /// Subject common name; must differ from the anchor's.
        #[arg(long, default_value = generate::DEFAULT_ISSUER_NAME)]
        name: String,
        #[command(flatten)]
        validity: ValidityArgs<8760>,
    },
    /// Issue a workload certificate; --out holds the leaf followed by the issuer chain.
    Issue {
        #[command(flatten)]
        signer: SignerArgs,
        #[command(flatten)]
        out: Output,
        /// Full identity, e.g. vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local.
        #[arg(long, conflicts_with_all = ["sa", "ns"], required_unless_present_all = ["sa", "ns"])]
        name: Option<String>,
        /// Service account (with --ns instead of --name).
        #[arg(long, requires = "ns")]
        sa: Option<String>,
        /// Namespace of the service account.
        #[arg(long, requires = "sa")]
        ns: Option<String>,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Namespace of the control plane.
        #[arg(long, default_value = "linkerd")]
        control_plane_ns: String,
        /// Clock-skew allowance added at both ends of the validity window.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        clock_skew: Duration,
        #[command(flatten)]
        validity: ValidityArgs<24>,
    },
    /// Print a certificate's fields (every certificate in the file).
    Inspect {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check a leaf chains to the anchors; prints its identity, or the reason it is refused.
    Verify {
        /// PEM file of one or more trust anchors.
        #[arg(long)]
        anchors: PathBuf,
        /// PEM file(s) of intermediates; certificates after the leaf in LEAF count too.
        #[arg(long)]
        intermediates: Vec<PathBuf>,
        /// The leaf (optionally followed by its chain).
        leaf: PathBuf,
        /// Require that the certificate names this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Which side of TLS the certificate must be fit for.
        #[arg(long, value_enum, default_value_t = UsageArg::Both)]
        usage: UsageArg,
        /// Check at this time (RFC 3339) instead of now.
        #[arg(long, value_parser = parse_time)]
        at: Option<OffsetDateTime>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum UsageArg {
    Client,
    Server,
    Both,
}

#[derive(Args)]
struct Output {
    /// Where to write the certificate (PEM).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the private key (PKCS#8 PEM, mode 0600).
    #[arg(long)]
    key_out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct SignerArgs {
    /// The signing CA's certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The signing CA's private key (PEM, PKCS#8 or SEC1).
    #[arg(long)]
    ca_key: PathBuf,
}

/// Validity flags; `H` is the default lifetime in hours.
#[derive(Args)]
struct ValidityArgs<const H: u64> {
    /// Lifetime, as a duration (e.g. 8760h, 24h, 90m).
    #[arg(long, value_parser = humantime::parse_duration)]
    not_after: Option<Duration>,
    /// Start of validity (RFC 3339); default now.
    #[arg(long, value_parser = parse_time)]
    not_before: Option<OffsetDateTime>,
}

impl<const H: u64> ValidityArgs<H> {
    fn get(&self) -> Validity {
        Validity {
            not_before: self.not_before,
            lifetime: self.not_after.unwrap_or(Duration::from_secs(H * 3600)),
        }
    }
}

fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("identity: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Anchor {
            out,
            name,
            validity,
        } => {
            out.check()?;
            let g = generate::make_anchor(&name, validity.get())?;
            out.write(&g)?;
        }
        Cmd::Issuer {
            signer,
            out,
            name,
            validity,
        } => {
            out.check()?;
            let anchor = Signer::load(&signer.ca, &signer.ca_key)?;
            let g = generate::make_issuer(&anchor, &name, validity.get())?;
            out.write(&g)?;
        }
        Cmd::Issue {
            signer,
            out,
            name,
            sa,
            ns,
            trust_domain,
            control_plane_ns,
            clock_skew,
            validity,
        } => {
            out.check()?;
            let id = match (name, sa, ns) {
                (Some(name), _, _) => Identity::parse(&name)?,
                (None, Some(sa), Some(ns)) => {
                    Identity::workload(&sa, &ns, &control_plane_ns, &trust_domain)?
                }
                _ => bail!("give --name, or --sa with --ns"),
            };
            let issuer = Signer::load(&signer.ca, &signer.ca_key)?;
            let opts = LeafOptions {
                validity: validity.get(),
                clock_skew,
            };
            let g = generate::issue_leaf(&issuer, &id, opts)?;
            out.write(&g)?;
        }
        Cmd::Inspect { file, json } => inspect(&file, json)?,
        Cmd::Verify {
            anchors,
            intermediates,
            leaf,
            identity,
            usage,
            at,
        } => return verify(&anchors, &intermediates, &leaf, identity, usage, at),
    }
    Ok(ExitCode::SUCCESS)
}

impl Output {
    /// Refuse before generating anything, so a failed run leaves no half-written pair.
    fn check(&self) -> anyhow::Result<()> {
        if self.out == self.key_out {
            bail!("--out and --key-out must be different files");
        }
        if !self.force {
            for p in [&self.out, &self.key_out] {
                if p.exists() {
                    bail!("{} exists; pass --force to overwrite it", p.display());
                }
            }
        }
        Ok(())
    }

    fn write(&self, g: &generate::Generated) -> anyhow::Result<()> {
        write_file(&self.key_out, g.key_pem.as_bytes(), 0o600, self.force)?;
        write_file(&self.out, g.cert_pem.as_bytes(), 0o644, self.force)?;
        let info = CertInfo::parse(&g.cert_der)?;
        eprintln!(
            "wrote {} ({}, {}, expires {}) and {}",
            self.out.display(),
            info.subject_cn()
                .unwrap_or(info.sans.first().map(String::as_str).unwrap_or("")),
            info.key_algorithm,
            info.not_after,
            self.key_out.display()
        );
        Ok(())
    }
}

fn write_file(path: &Path, data: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` applies only to new files; an overwritten key must not keep wider permissions.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let certs = identity::pem::load_certs(file)?;
    let now = OffsetDateTime::now_utc();
    let infos = certs
        .iter()
        .map(|c| CertInfo::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    if json {
        let items: Vec<_> = infos
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("seconds_left".into(), i.seconds_left(now).into());
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    for (n, i) in infos.iter().enumerate() {
        if n > 0 {
            println!();
        }
        println!(
            "Certificate {} of {} in {}",
            n + 1,
            infos.len(),
            file.display()
        );
        println!("  Subject:             {}", i.subject);
        println!("  Issuer:              {}", i.issuer);
        println!("  SANs:                {}", i.sans.join(", "));
        println!("  Serial:              {}", i.serial);
        println!("  Not before:          {}", i.not_before);
        println!(
            "  Not after:           {} ({})",
            i.not_after,
            i.time_left(now)
        );
        println!("  Key:                 {}", i.key_algorithm);
        println!("  Signature:           {}", i.signature_algorithm);
        let ca = match (i.is_ca, i.path_len) {
            (true, Some(n)) => format!("CA:TRUE, pathlen {n}"),
            (true, None) => "CA:TRUE".to_string(),
            (false, _) => "CA:FALSE".to_string(),
        };
        println!(
            "  Basic constraints:   {ca}{}",
            if i.self_signed { " (self-signed)" } else { "" }
        );
        println!("  Key usage:           {}", i.key_usage.join(", "));
        println!("  Extended key usage:  {}", i.extended_key_usage.join(", "));
        println!("  SHA-256 fingerprint: {}", i.sha256_fingerprint);
    }
    Ok(())
}

fn verify(
    anchors: &Path,
    intermediates: &[PathBuf],
    leaf: &Path,
    expected: Option<String>,
    usage: UsageArg,
    at: Option<OffsetDateTime>,
) -> anyhow::Result<ExitCode> {
    let anchors = TrustAnchors::load(anchors)?;
    let mut chain = identity::pem::load_certs(leaf)?;
    let leaf_cert = chain.remove(0);
    for p in intermediates {
        chain.extend(identity::pem::load_certs(p)?);
    }
    let now = match at {
        Some(t) => rustls_pki_types_time(t),
        None => identity::verify::now(),
    };
    let usage = match usage {
        UsageArg::Client => Usage::Client,
        UsageArg::Server => Usage::Server,
        UsageArg::Both => Usage::Both,
    };
    let result = match expected {
        Some(name) => {
            let expected = Identity::parse(&name)?;
            anchors.verify_identity(&leaf_cert, &chain, now, usage, &expected)
        }
        None => anchors.verify(&leaf_cert, &chain, now, usage),
    };
    match result {
        Ok(id) => {
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "identity: invalid: {}: {e} [{}]",
                leaf.display(),
                e.reason()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn rustls_pki_types_time(t: OffsetDateTime) -> rustls::pki_types::UnixTime {
    rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
        t.unix_timestamp().max(0) as u64
    ))
}
