package PVE::Notify;

# Stand-in for pve-cluster's PVE::Notify (src/PVE/Notify.pm) in the tests:
# the same calls, checked as the real module's callers rely on them, and each
# one recorded as a JSON line in notifications.jsonl two folders above this
# file (the fake host's or the sandbox's folder). The tests put it first on
# perl's @INC with a `perl` wrapper on their PATH.

use strict;
use warnings;

use File::Basename qw(dirname);
use JSON::PP;

my $log = dirname(__FILE__) . '/../../notifications.jsonl';

sub common_template_data {
    return { hostname => 'stand-in', fqdn => 'stand-in.example.org' };
}

sub notify {
    my ($severity, $template, $data, $fields) = @_;
    die "unknown severity '$severity'\n" if $severity !~ /^(info|notice|warning|error)$/;
    die "no template name\n" if !$template;
    die "template data is not a hash\n" if ref($data) ne 'HASH';
    die "fields are not a hash\n" if ref($fields) ne 'HASH';
    open(my $fh, '>>', $log) or die "$log: $!\n";
    print $fh JSON::PP->new->canonical->encode({
        severity => $severity,
        template => $template,
        data => $data,
        fields => $fields,
    }), "\n";
    close($fh) or die "$log: $!\n";
}

sub info { notify('info', @_) }
sub notice { notify('notice', @_) }
sub warning { notify('warning', @_) }
sub error { notify('error', @_) }

1;
